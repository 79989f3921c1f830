"""Helpers of the int_quant method: which weights, in which form, calibration, sensitivity, auto choice."""
