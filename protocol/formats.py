"""The values a start command may carry for format, rate and mode (the spec's lists)."""

FORMATS: tuple[str, ...] = ("alaw", "ulaw", "oki", "ima", "s16bit", "u8bit")
RATES: tuple[int, ...] = (6000, 8000, 11000, 11025)
MODES: tuple[str, ...] = ("mixed", "separate")
#: The spec: "When recording separate channels file_format must be one of alaw, ulaw, u8bit and s16bit".
SEPARATE_FORMATS: tuple[str, ...] = ("alaw", "ulaw", "u8bit", "s16bit")
#: Leg audio arrives at this rate; other rates are produced by the worker's resampler.
CALL_RATE = 8000
