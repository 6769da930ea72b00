"""Amaranth generators for accel's kernels. They take plain parameter objects and the integer
constants of accel.models' reference operators, never torch modules."""
