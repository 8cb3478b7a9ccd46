"""A CSTM small enough for unit tests (about 0.1 M parameters)."""

TINY_CSTM = dict(key_block="basic", key_layers=(1, 1, 1), key_widths=(16, 16, 32), value_layers=(1, 1, 1),
                 value_widths=(8, 16, 16), value_channels=(32, 16), decoder_channels=(32, 16, 16))
