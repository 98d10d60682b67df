"""Camera footage for the camera-scene suite: frames of real fixed cameras, as the daemon would analyse them.

Writes $REPO/.cache/testdata/camera/:
  vtest/fNNNN.jpg      every 5th frame (2 a second of the clip's 10) of OpenCV's vtest.avi, Debian opencv-doc: a
                       fixed camera over a campus road crossing (PETS 2009 S2.L1 view 1), 768x576, people walking,
                       a parked van and car, traffic cones, litter on the grass
  concourse/fNNNN.jpg  every 12th frame (2.08 a second of the clip's 25) of docs/examples/vid.mp4 in PyPI
                       supertracker's sdist: a fixed camera high over an indoor concourse, 1920x1080, grey, 30 to 45
                       people walking in and out on every side and a group standing still
  index.json           {"clips": [{id, source, video, video_sha256, fps, stride, frames: [file names]}]}
NNNN is the frame's index in its clip. Decoded with OpenCV's bundled FFmpeg; JPEG quality 92.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass

import cv2

from common import (CACHE, digest_of, mark_references, parse_args, references_current, scripts_digest, sha256_bytes,
                    write_atomic)
from sources import SourceError, ensure_sources

OUT = CACHE / "testdata" / "camera"
JPEG_QUALITY = 92


@dataclass(frozen=True)
class Clip:
    id: str
    source_key: str
    video: str  # the file inside the package
    sha256: str
    frames: int  # how many the whole clip decodes to
    stride: int


CLIPS = [
    Clip("vtest", "opencv-doc", "usr/share/doc/opencv-doc/examples/data/vtest.avi",
         "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf", 795, 5),
    Clip("concourse", "supertracker", "supertracker-0.2.0/docs/examples/vid.mp4",
         "822671fb20ed13ef9ead91d1f3678863b5aa078dd3b2ed45953fda39a61c979d", 341, 12),
]


def extract(clip: Clip, video: bytes) -> tuple[float, list[str]]:
    """Writes every `clip.stride`-th frame of `video` as JPEG; returns the clip's frame rate and the file names."""
    with tempfile.NamedTemporaryFile(suffix="." + clip.video.rsplit(".", 1)[1]) as file:
        file.write(video)
        file.flush()
        capture = cv2.VideoCapture(file.name)
        fps = capture.get(cv2.CAP_PROP_FPS)
        names, index = [], 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % clip.stride == 0:
                name = f"f{index:04d}.jpg"
                ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:
                    raise SourceError(f"cannot encode frame {index} of {clip.id}")
                write_atomic(OUT / clip.id / name, jpeg.tobytes())
                names.append(name)
            index += 1
    if index != clip.frames:
        raise SourceError(f"decoded {index} frames of {clip.video}, expected {clip.frames}")
    return fps, names


def main() -> int:
    start = time.perf_counter()
    args = parse_args(__doc__.splitlines()[0])
    if args.no_reference:
        return 0
    try:
        sources = ensure_sources(CACHE / "sources", {c.source_key for c in CLIPS})
        digest = digest_of((scripts_digest(), *(c.sha256 for c in CLIPS), cv2.__version__))
        if references_current(OUT, digest, args.force):
            print(f"camera footage up to date: {OUT} ({time.perf_counter() - start:.1f} s)")
            return 0
        entries = []
        for clip in CLIPS:
            source = sources[clip.source_key]
            video = source.read(clip.video)
            if sha256_bytes(video) != clip.sha256:
                raise SourceError(f"{clip.video} in {source.filename} is not the pinned clip (sha256 {clip.sha256})")
            fps, names = extract(clip, video)
            entries.append({"id": clip.id, "source": f"{source.registry} {source.name} {source.version}",
                            "video": clip.video, "video_sha256": clip.sha256, "fps": fps, "stride": clip.stride,
                            "frames": names})
            print(f"camera footage: {len(names)} frames of {clip.id} in {OUT / clip.id}")
    except (SourceError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_atomic(OUT / "index.json", (json.dumps({"clips": entries}, indent=1) + "\n").encode())
    mark_references(OUT, digest)
    print(f"camera footage ready ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
