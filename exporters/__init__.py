"""edgekit.exporters: one module per target family, registered by target name."""
