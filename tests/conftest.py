"""Fixtures shared by test modules."""
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ulx3s_stand_in_build():
    """One real ULX3S build (Yosys, nextpnr, ecppack) of the board top with the stand-in core and
    12,288 random words in its RAM, placed and routed by a race of two seeds with every failing
    endpoint listed: (BuildResult, top, progress lines, words). tests/test_build.py checks the
    build, tests/test_ecp5_bram.py the RAM's contents in its configuration."""
    from accel.build import build_top
    from accel.hdl.board_top import BoardTop, CopyCore
    rng = random.Random(7)
    words = [rng.getrandbits(64) for _ in range(12288)]
    words[0] = 64 | ((8 * 256) << 32)          # CopyCore's descriptor: copy 64 words to word 256
    top = BoardTop(None, words, 0, core=CopyCore(), clock_mhz=50)
    said = []
    res = build_top(top, "ulx3s-85f", REPO / "build" / "test_build" / "ulx3s-85f", progress=said.append,
                    timing_paths=True, race_seeds=(None, 2))
    return res, top, said, words
