"""The one list of the core's public names: the compiled core (``_fast``), its pure twin
(``_pure``) and :mod:`herdrt.core` all take it from here, and the tests hold both implementations
to the same names and signatures."""

PUBLIC_NAMES = (
    "encode_frame",
    "encode_frames",
    "FrameDecoder",
    "HashRing",
    "md5_shard",
    "jump_hash",
    "OnlineStats",
    "QuantileSketch",
    "DEFAULT_MAX_FRAME_SIZE",
    "RECORD_MAX",
    "RECORD_TAG_SIZE",
    "RecordSealer",
    "RecordOpener",
)
