"""Settings, and where the broker, the result backend and the state store live."""
