# TEMPORARY placeholder until the compiled framing lands
from herdrt._pure import DEFAULT_MAX_FRAME_SIZE, encode_frame, encode_frames, FrameDecoder
