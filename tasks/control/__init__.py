"""The control side on ferry.control: the coordinator, the evacuation runner, metrics."""
