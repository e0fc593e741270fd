"""Cross-run and post-hoc analyses that read finished runs through the run reader: ticket comparison,
lottery-ticket controls, partial re-initialisation and physical shrink. They are not lenses."""
