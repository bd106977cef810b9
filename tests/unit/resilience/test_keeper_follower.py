"""The driver's keeper follower (components/resilience/driver.py): a node that joins during the fit gets the
run's keeper as it joins (the follower's next look), without waiting for a recovery to ask.

Uses the package's shared cluster; the node it adds is removed again, so later modules find their shape.
"""

from __future__ import annotations

import time

from components.training.rayjob import HOST_LABEL


def test_a_node_that_joins_during_the_fit_gets_the_runs_keeper(cluster, make_config):
    import ray

    from components.resilience.driver import KeeperFollower
    from components.resilience.keeper_actor import keeper_name, keeper_namespace, stop_keepers

    run = "follower-test"
    follower = KeeperFollower(run, make_config(), {n["NodeID"] for n in ray.nodes()})
    node = cluster.add_node(num_cpus=0, node_ip_address="127.0.0.1", labels={HOST_LABEL: "host-follower-test"})
    try:
        for _ in range(600):  # the keeper is started, not awaited: its named actor appears at once
            if node.node_id in follower.started:
                break
            time.sleep(0.1)
        follower.close()
        assert follower.started == [node.node_id]
        assert ray.get_actor(keeper_name(run, node.node_id), namespace=keeper_namespace(run))
    finally:
        follower.close()
        stop_keepers(run)
        cluster.remove_node(node)
