"""Max Woolf's recipe for a "wrong" image set: every prompt lists all the defect keywords with one
of them weighted ``++++``, at guidance 8 to 13, 78 images by default.

The design notes count 13 keywords (13 x 6 guidance values = 78) but list 14; all 14 are used, and
the 78 images cycle through the keywords so each is weighted 5 or 6 times across the guidances."""

from negalora.api import GenerateRequest

KEYWORDS = (
    "low quality",
    "bad hands",
    "random text",
    "error",
    "missing fingers",
    "extra fingers",
    "cropped",
    "jpeg artifacts",
    "signature",
    "watermark",
    "blurry",
    "ugly",
    "duplicate",
    "mutilated",
)
GUIDANCES = (8.0, 9.0, 10.0, 11.0, 12.0, 13.0)
DEFAULT_COUNT = 78


def wrong_prompt(weighted: str) -> str:
    return ", ".join(f"({kw})++++" if kw == weighted else kw for kw in KEYWORDS)


def wrong_set_requests(count: int = DEFAULT_COUNT, seed: int = 0, **settings) -> list[GenerateRequest]:
    """Requests that make ``count`` images: image k weights keyword k mod 14 at guidance
    8 + (k // 14) mod 6 and gets seed ``seed + k``. ``settings`` go into every request."""
    requests = []
    for k in range(count):
        kw = KEYWORDS[k % len(KEYWORDS)]
        guidance = GUIDANCES[(k // len(KEYWORDS)) % len(GUIDANCES)]
        requests.append(GenerateRequest(prompts=(wrong_prompt(kw),), guidance=guidance, seed=seed + k, **settings))
    return requests
