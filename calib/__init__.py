"""edgekit.calib: INT8 calibration, the QuantRecipe and QDQ insertion."""
