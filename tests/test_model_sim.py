"""The whole accelerator: instruction format, model compiler, cycle model, and the generated top
running whole models in RTL (Verilator) bit for bit against the integer reference."""
from __future__ import annotations

import numpy as np
import pytest

from accel.compiler import CapacityError, compile_model
from accel.compiler_cost import MemoryTiming, expert_counts, predict_cycles
from accel.hdl.linear import LinearParams
from accel.hdl.program import OP, decode, encode
from accel.hdl.top import TopParamError, TopParams
from accel.models.config import load_config
from accel.models.data import eval_set
from accel.models.reference import load_reference
from accel.sim.linear_runner import simulator_available
from accel.sim.model_runner import run_model, top_params_for

needs_verilator = pytest.mark.skipif(not simulator_available("verilator")[0], reason="verilator not installed")


@pytest.fixture(scope="module")
def digits_design():
    return top_params_for(load_config("digits-moe"))


def test_instruction_round_trip_and_errors():
    raw = encode(op=OP.READ, mode=2, port=3, base_a=0x1234_5678, n_rows=129, wa=1, expert=15)
    assert len(raw) == 64
    f = decode(raw)
    assert (f["op"], f["mode"], f["port"], f["base_a"], f["n_rows"], f["wa"], f["expert"]) == \
        (OP.READ, 2, 3, 0x1234_5678, 129, 1, 15)
    with pytest.raises(ValueError, match="instruction field 'bogus' does not exist"):
        encode(bogus=1)
    with pytest.raises(ValueError, match="instruction field n_rows=65536 does not fit in 16 bits"):
        encode(n_rows=1 << 16)


def test_top_params_refuse_what_the_datapath_cannot_serve():
    with pytest.raises(TopParamError, match=r"linear.t_in=4 is not a multiple of 8 \(a lane's chunk must be whole"):
        TopParams(linear=LinearParams(t_in=4))
    with pytest.raises(TopParamError, match="linear.expert=False"):
        TopParams(linear=LinearParams(expert=False))


def test_compile_digits_program_and_capacity_errors(digits_design):
    ref = load_reference("digits-moe")
    comp = compile_model(ref, digits_design)
    assert comp.program[-1]["op"] == OP.END
    # one fetch-flagged weight read per expert per MoE layer; each expert's block can be skipped
    assert comp.expert_weight_reads == 2 * 4
    assert sum(1 for i in comp.program if i["op"] == OP.SKIP) == 8
    # every op output of the reference trace has a buffer, in execution order
    trace = ref.trace(ref.quantize_images(eval_set(ref.cfg, 1).images)[0])
    names = [(r.layer, r.name) for r in trace.records]
    order = [names.index((o.layer, o.name)) for o in comp.outputs]
    assert order == sorted(order)
    # a model beyond the design's capacity is refused with the dimension, the limit and the fix
    micro_design = top_params_for(load_config("micro-moe"))
    with pytest.raises(CapacityError, match=r"model 'digits-moe': tokens=17 exceeds the design's limit 5; "
                                            r"generate the design with a larger LinearParams.max_tokens"):
        compile_model(ref, micro_design)
    wide = top_params_for(load_config("micro-moe"), max_tokens=17)
    with pytest.raises(CapacityError, match=r"0/ln1: channels=48 exceeds the design's limit 32; generate the design "
                                            r"with a larger LayerNormParams.max_channels"):
        compile_model(ref, wide)
    with pytest.raises(CapacityError, match=r"blocks=\[1, 3\]: pass consecutive block indices"):
        compile_model(ref, digits_design, blocks=[1, 3])


def test_attention_ops_wait_for_their_outputs_before_the_next(digits_design):
    """The top's attention kernel reads out_shift from its configuration register (hdl/top.py,
    out_shift_in_flight=False): the program must wait for every output of an attention op before
    the next op's constants reach the kernel."""
    from accel.hdl.program import PORT
    from accel.sim.model_runner import op_of
    comp = compile_model(load_reference("digits-moe"), digits_design)
    by_op: dict[str, list] = {}
    for ins in comp.program:
        by_op.setdefault(op_of(ins["comment"]), []).append(ins)
    att = {op: ins for op, ins in by_op.items()
           if any(i["op"] == OP.READ and i.get("port") == PORT.ATT_CFG for i in ins)}
    assert len(att) == 4                                # one attention op per block
    for op, ins in att.items():
        assert ins[-1]["op"] == OP.WAIT, f"attention op {op!r} ends with {ins[-1]['comment']!r}, not a WAIT"
        assert all(i.get("port") in (PORT.ATT_CFG, PORT.ATT_Q, PORT.ATT_K, PORT.ATT_V)
                   for i in ins if i["op"] == OP.READ), op   # nothing else reads between its constants and its WAIT


def test_cycle_model_parts_and_memory_sensitivity(digits_design):
    ref = load_reference("digits-moe")
    comp = compile_model(ref, digits_design)
    q = ref.quantize_images(eval_set(ref.cfg, 1).images)
    total, kinds, per_op = predict_cycles(comp, ref, q[:1])
    assert abs(total - sum(kinds.values())) <= len(kinds)
    assert set(kinds) >= {"linear", "attention", "layernorm", "residual", "gate", "experts", "moe_combine"}
    slow, _, _ = predict_cycles(comp, ref, q[:1], MemoryTiming(latency_cycles=40, words_per_cycle=0.5))
    assert slow > 1.5 * total
    counts = expert_counts(ref, q[0])
    assert sorted(counts) == [1, 3] and all(c.sum() == 17 * 2 for c in counts.values())


@needs_verilator
def test_digits_moe_in_rtl_with_stalls_is_bit_exact(digits_design):
    r = run_model("digits-moe", images=2, params=digits_design, stalls=True, seed=3)
    assert r.error is None, r.error
    assert r.mismatches == 0 and r.first_mismatch is None
    assert r.rtl_accuracy == r.int_accuracy
    assert r.expert_fetches == r.active_experts          # one fetch per active expert per layer
    # with random stalls the model's memory is approximate: within 20% here (10% stall-free)
    assert abs(r.predicted_cycles_per_image / r.cycles_per_image - 1) < 0.2


@needs_verilator
def test_serial_attention_outputs_in_the_open_flow_design_are_bit_exact():
    """The design `accel run` builds for the ULX3S (accel.build.smallest_design: one attention
    head a lane, the residual unit's two product lanes, the LayerNorm emitting two lanes) with the
    attention outputs multiplied by the reciprocal two at a time (AttentionParams.out_lanes):
    bit-exact with stalls, and the program's cycle model within 2% without them."""
    from dataclasses import replace

    from accel.boards import load_board
    from accel.build import smallest_design
    from accel.project import top_params
    cfg = load_config("digits-moe")
    params = top_params(smallest_design(cfg, load_board("ulx3s-85f")), cfg)
    params = replace(params, attention=replace(params.attention, out_lanes=2))
    assert (params.attention.heads, params.attention.out_steps, params.residual.steps) == (1, 4, 4)
    r = run_model("digits-moe", images=1, params=params, stalls=True, seed=7)
    assert r.error is None, r.error
    assert r.mismatches == 0 and r.first_mismatch is None
    free = run_model("digits-moe", images=1, params=params, stalls=False)
    assert free.error is None and free.mismatches == 0
    assert abs(free.predicted_cycles_per_image / free.cycles_per_image - 1) < 0.02


@needs_verilator
@pytest.mark.parametrize("reset_after", [7_000, 24_800, 30_000])
def test_a_reset_in_the_middle_of_a_run_leaves_nothing_behind(digits_design, reset_after):
    """Datapath registers have no reset (their contents count only under a valid flag): a run cut
    short by a reset leaves them full of its data, and the run after it must still be exact. The
    cut falls (with these stalls, counted from the start) in block 0's attention (5,879-7,979),
    block 1's gate (24,401-25,120) and its second expert (28,349-32,239): the expert accumulator
    memory then holds partial sums, which the kernel must clear after the reset."""
    r = run_model("digits-moe", images=1, params=digits_design, stalls=True, seed=5, reset_after=reset_after)
    assert r.error is None, r.error
    assert r.mismatches == 0 and r.first_mismatch is None


@needs_verilator
def test_one_design_runs_a_second_model_with_empty_experts(digits_design):
    """micro-moe (dim 32, 5 tokens, 3 experts top-1) on the RTL generated for digits-moe;
    images 0 and 7 leave one and two experts without tokens."""
    ref = load_reference("micro-moe")
    q = ref.quantize_images(eval_set(ref.cfg, 8).images)
    empty = [int((expert_counts(ref, q[k])[1] == 0).sum()) for k in (0, 7)]
    assert empty == [1, 2]
    r = run_model("micro-moe", images=8, params=digits_design, stalls=False)
    assert r.ok, (r.error, r.first_mismatch)
    assert r.expert_fetches == r.active_experts and min(r.active_experts) == 1
    assert abs(r.predicted_cycles_per_image / r.cycles_per_image - 1) < 0.1


@needs_verilator
def test_a_corrupted_weight_is_found_at_its_op(digits_design):
    """The comparison can fail: one weight byte of block 0's projection flipped in the image."""
    ref = load_reference("digits-moe")
    comp = compile_model(ref, digits_design)
    proj = next(i for i in comp.program if i["comment"].startswith("0/proj:") and i["op"] == OP.READ)
    comp.image[proj["base_d"]] ^= 0x55
    r = run_model("digits-moe", images=1, params=digits_design, comp=comp)
    assert r.mismatches > 0 or r.first_mismatch is not None
    fm = r.first_mismatch
    assert (fm["layer"], fm["op"]) == (0, "proj"), fm
    assert fm["expected"] != fm["got"]


@pytest.mark.slow
@needs_verilator
def test_m3vit_tiny_moe_layer_in_rtl():
    """One full M3ViT-tiny MoE block (129 tokens, 16 experts, top-2) from its input stream."""
    cfg = load_config("m3vit-tiny")
    params = top_params_for(cfg, p=8, head=False)
    r = run_model("m3vit-tiny", images=1, params=params, blocks=[1])
    assert r.ok, (r.error, r.first_mismatch)
    assert r.expert_fetches == [len(np.unique(np.asarray(load_reference("m3vit-tiny").run(
        load_reference("m3vit-tiny").quantize_images(eval_set(cfg, 1).images)).routing[0])))]
