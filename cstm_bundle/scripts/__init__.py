"""cstm_bundle scripts: what MONAI lacks for 4D cine propagation (network, PLMM, 4D inferer, phantom, readers)."""
