"""The router2 stall rule (accel.router_watch) on iteration trajectories of real builds."""
import pytest

from accel.models.errors import AccelError
from accel.router_watch import DEFAULT_PATIENCE, check_patience, router_iterations, router_stall


def log(counts, start=1):
    return "".join(f"Info:     iter={i} wires={700000 + i} overused={c} overuse={c + 5} archfail=NA\n"
                   for i, c in enumerate(counts, start))


# the landed run design's default seed (build rl2): routed at iteration 43
ROUTED = [63022, 36378, 22746, 14677, 10264, 7681, 5886, 4246, 3136, 2487, 2018, 1554, 1135, 860, 633, 478,
          338, 271, 229, 209, 158, 129, 108, 89, 63, 58, 56, 48, 39, 28, 21, 18, 16, 12, 13, 7, 11, 5, 3, 1, 1, 1, 0]
# a routed build whose last wires took 11 iterations (s8b, iterations 23-52)
ROUTED_SLOW_END = [114, 97, 80, 59, 47, 41, 29, 27, 22, 17, 10, 16, 12, 10, 7, 5, 5, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2,
                   1, 1, 0]
# the out_lanes=2 run design's default seed (build ol2): a low of 448 at iteration 28, then up
STALLED = [55799, 31701, 19132, 12514, 8841, 6536, 4952, 3958, 3139, 2391, 1946, 1623, 1420, 1180, 1105, 919,
           855, 780, 764, 694, 651, 615, 556, 549, 533, 477, 498, 448, 537, 491, 456, 512, 505, 536, 553, 565,
           640, 690, 779, 832, 884, 990, 1098]


def test_routed_runs_never_stall():
    assert router_stall(log(ROUTED)) is None
    assert router_stall(log(ROUTED_SLOW_END, start=23)) is None


def test_a_climb_after_the_low_is_a_stall_at_the_patience():
    st = router_stall(log(STALLED))
    assert (st.best_iteration, st.best_overused, st.iteration, st.overused, st.patience) == (28, 448, 38, 690, 10)
    assert st.describe() == ("router2 stopped converging: its low was 448 overused wires at iteration 28, and 10 "
                             "iterations later (iteration 38) it is at 690")
    assert router_stall(log(STALLED[:37])) is None                   # one iteration short of the patience
    assert router_stall(log(STALLED), patience=20) is None           # more patience than the log holds
    assert router_stall(log(STALLED), patience=0) is None            # 0: never
    assert router_stall(log(STALLED), floor=500) is None             # a low under the floor is the end game


def test_only_the_last_router_run_of_a_log_counts():
    text = log(STALLED) + log(ROUTED[:20])                           # a second run started over
    assert router_iterations(text)[0] == (1, 63022) and len(router_iterations(text)) == 20
    assert router_stall(text) is None
    assert router_iterations("Info: placed\n") == [] and router_stall("") is None


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_patience_must_be_a_count(bad):
    with pytest.raises(AccelError, match=rf"router_patience={bad!r}: must be an int >= 0, the router2 iterations "
                                         rf"without a new low of overused wires before a build stops \(0: never; "
                                         rf"default {DEFAULT_PATIENCE}\)".replace("'", "'")):
        check_patience(bad)
    assert check_patience(0) == 0 and check_patience(12) == 12
