"""Camera footage for the camera-scene suite: frames of a real fixed camera, as the daemon would analyse them.

Writes $REPO/.cache/testdata/camera/:
  vtest/fNNNN.jpg  every 5th frame (2 a second of the clip's 10) of OpenCV's vtest.avi, Debian opencv-doc: a fixed
                   camera over a campus road crossing (PETS 2009 S2.L1 view 1), 768x576, people walking, a parked
                   van and car, traffic cones, litter on the grass; NNNN is the frame's index in the clip
  index.json       {source, video, video_sha256, fps, stride, frames: [file names]}
The clip is MS-MPEG4v3, decoded with OpenCV's bundled FFmpeg; JPEG quality 92.
"""

from __future__ import annotations

import json
import sys
import time

import cv2

from common import (CACHE, digest_of, mark_references, parse_args, references_current, scripts_digest, sha256_bytes,
                    write_atomic)
from sources import SourceError, ensure_sources

OUT = CACHE / "testdata" / "camera"
VIDEO = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
VIDEO_SHA256 = "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
STRIDE = 5
JPEG_QUALITY = 92


def main() -> int:
    start = time.perf_counter()
    args = parse_args(__doc__.splitlines()[0])
    if args.no_reference:
        return 0
    try:
        source = ensure_sources(CACHE / "sources", {"opencv-doc"})["opencv-doc"]
    except (SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    video = source.unpacked / VIDEO
    if sha256_bytes(video.read_bytes()) != VIDEO_SHA256:
        print(f"error: {video} is not the pinned vtest.avi (sha256 {VIDEO_SHA256})", file=sys.stderr)
        return 1
    digest = digest_of((scripts_digest(), VIDEO_SHA256, cv2.__version__))
    if references_current(OUT, digest, args.force):
        print(f"camera footage up to date: {OUT} ({time.perf_counter() - start:.1f} s)")
        return 0
    capture = cv2.VideoCapture(str(video))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames, index = [], 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % STRIDE == 0:
            name = f"f{index:04d}.jpg"
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                print(f"error: cannot encode frame {index}", file=sys.stderr)
                return 1
            write_atomic(OUT / "vtest" / name, jpeg.tobytes())
            frames.append(name)
        index += 1
    if index != 795:
        print(f"error: decoded {index} frames of vtest.avi, expected 795", file=sys.stderr)
        return 1
    entry = {"source": f"debian {source.name} {source.version}", "video": VIDEO, "video_sha256": VIDEO_SHA256,
             "fps": fps, "stride": STRIDE, "frames": frames}
    write_atomic(OUT / "index.json", (json.dumps(entry, indent=1) + "\n").encode())
    mark_references(OUT, digest)
    print(f"camera footage: {len(frames)} frames of vtest.avi in {OUT} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
