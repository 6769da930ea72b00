"""accel: FPGA co-design toolkit for quantized Mixture-of-Experts vision transformers.

Layers, each importing only the ones below it: accel (cost models, search, flows, CLI) ->
accel.sim (cocotb testbenches) -> accel.hdl (Amaranth generators) -> accel.models (float model
and the bit-exact integer reference)."""
from accel.models.errors import AccelError, ConfigError, NumericsError, ShapeError

__version__ = "0.1.0"
__all__ = ["AccelError", "ConfigError", "NumericsError", "ShapeError", "__version__"]
