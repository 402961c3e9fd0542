"""Seeds fuzz/corpus/celery_body with the bodies of the captured tchu-tchu messages
(tests/fixtures/tchu-tchu-3.0.4/*.json, field `body_utf8`). Standard library only."""

import hashlib
import json
import pathlib

root = pathlib.Path(__file__).resolve().parent
out = root / "corpus" / "celery_body"
out.mkdir(parents=True, exist_ok=True)
for f in sorted((root.parent / "tests" / "fixtures" / "tchu-tchu-3.0.4").glob("*.json")):
    body = json.loads(f.read_text()).get("body_utf8")
    if isinstance(body, str):
        data = body.encode()
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)
