"""Any ``--net`` no node can carry is refused, naming it, with nothing started.

The simulated cluster's nodes have no bridge: every address is either
malformed or outside the cluster networks (tests/unit/test_netaddr.py has the
table of which is which; tests/integration/test_net_runtime.py and
tests/e2e/test_tcp_move.py the refusals on nodes that have bridges).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.integration.test_bad_input_properties import CLUSTER, cli_refused, refused, sim

__all__ = ["sim"]  # the fixture, shared

BAD_NETS = st.one_of(
    st.text(max_size=30).filter(lambda t: t.strip() != ""),
    st.ip_addresses(v=4).map(lambda a: f"{a}/24"),
)


@CLUSTER
@given(net=BAD_NETS)
def test_api_and_cli_refuse_an_address_no_node_can_carry(sim, net: str) -> None:  # noqa: F811
    refused(sim, lambda: sim.client.run("s1", ["true"], name="claimer", net=net), net)
    argv = ["run", "--node", "s1", "--name", "claimer", "--net", net, "--", "true"]
    cli_refused(sim, argv, net)
