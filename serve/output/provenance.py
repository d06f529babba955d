"""What every returned image file says about itself: that it is AI-generated, and how it was made.

- **AI-generated marking** (always; EU AI Act Art. 50 asks for a machine-readable one): an XMP packet
  with the IPTC digital source type `trainedAlgorithmicMedia` and the generator as `CreatorTool`.
  PNG carries it in an `XML:com.adobe.xmp` iTXt chunk, JPEG in its APP1 XMP segment, WebP in its
  `XMP ` chunk: where exiftool, Adobe tools and the IPTC/C2PA ecosystem look for it.
- **Generation parameters** (unless the operator turns them off, for privacy): the `parameters`
  text that A1111/ComfyUI users read back to reproduce a picture — the prompt as generated (after
  the safety filter), `Negative prompt: …`, then `Steps: …, Sampler: …, CFG scale: …, Seed: …,
  Size: WxH, Model: …, Version: …`. PNG: a `parameters` text chunk; JPEG and WebP: EXIF
  UserComment (UNICODE), as A1111 writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from xml.sax.saxutils import escape

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
EXIF_IFD, USER_COMMENT, SOFTWARE = 0x8769, 0x9286, 0x0131
UNICODE_PREFIX = b"UNICODE\x00"  # EXIF UserComment character code for UCS-2/UTF-16 (big-endian)


@cache
def software() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"sana-serve {version('sana-serve')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "sana-serve"


@dataclass(frozen=True)
class Provenance:
    """What to write into a file: the parameters text (None: marking only)."""

    parameters: str | None = None

    def xmp(self) -> bytes:
        return xmp_packet(software()).encode("utf-8")


def parameters_text(*, prompt: str, negative_prompt: str, steps: int, sampler: str, guidance_scale: float,
                    seed: int, width: int, height: int, model: str, lora: str | None = None,
                    lora_scale: float | None = None) -> str:
    """A1111's `parameters` layout: prompt, the negative prompt line, then `Key: value` pairs."""
    pairs = [("Steps", steps), ("Sampler", sampler), ("CFG scale", f"{guidance_scale:g}"), ("Seed", seed),
             ("Size", f"{width}x{height}"), ("Model", model)]
    if lora is not None:
        pairs.append(("Lora", f"{lora}:{1.0 if lora_scale is None else lora_scale:g}"))
    pairs.append(("Version", software()))
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


@cache  # the same packet for every file a process writes
def xmp_packet(creator_tool: str) -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
        f"<xmp:CreatorTool>{escape(creator_tool)}</xmp:CreatorTool>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="r"?>'
    )


def user_comment(text: str) -> bytes:
    """EXIF UserComment in the UNICODE character code (A1111's encoding of `parameters`)."""
    return UNICODE_PREFIX + text.encode("utf-16-be")


def read_user_comment(raw: bytes) -> str:
    if raw.startswith(UNICODE_PREFIX):
        return raw[len(UNICODE_PREFIX):].decode("utf-16-be")
    return raw[8:].decode("utf-8", errors="replace")
