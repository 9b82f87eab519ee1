"""Every planted bug and the correct layers they derive from, in one place: layers (per-layer mutants and their
correct bases), correct (correct layers and real models' layers), models (whole-model mutants), specs (modules the
plugin and CLI tests name by spec), sync (synchronized BN for the SyncBN checks)."""
