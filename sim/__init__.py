"""cocotb testbenches that drive accel.hdl's RTL with tensors traced from the integer reference."""
