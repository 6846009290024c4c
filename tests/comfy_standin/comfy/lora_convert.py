"""Stand-in of comfy.lora_convert: SD-1.5/SDXL kohya files pass through unchanged."""


def convert_lora(sd):
    return sd
