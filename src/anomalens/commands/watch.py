"""``anomalens watch``: score what a hot folder, a video, a stream or a camera delivers, as it arrives, and send
each verdict to the sinks (``anomalens.line``). SIGTERM or Ctrl-C: the image in hand is finished, the sinks
flushed, the state saved, and the command ends with status 0 and a one-line summary on stderr."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from anomalens.commands.options import add_device_argument, add_log_arguments, positive_count, seconds


def _rate(text: str) -> float:
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a rate > 0 frames per second, got '{text}'")
    return value


def add_watch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_EXPORT", help="a run folder (torch) or a folder written by 'anomalens export'")
    p.add_argument("source", metavar="SOURCE",
                   help="a hot folder (new image files, each scored once when complete), a video file, a stream URL "
                        "(rtsp://, http://, rtmp://, udp://, srt://) or camera:N (/dev/videoN)")
    p.add_argument("--sink", action="append", default=None, metavar="SPEC",
                   help="where each verdict goes (repeat for several): jsonl (stdout, the default), jsonl:PATH, "
                        "mqtt://HOST:PORT/PREFIX, opcua://HOST:PORT, webhook:URL")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"], default=None,
                   help="default: torch for a run, the export's own runtime for an export")
    add_device_argument(p, "torch runtime: where to run")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--every", type=positive_count, default=None, metavar="N", help="video: score every N-th frame")
    rate.add_argument("--fps", type=_rate, default=None, metavar="R",
                      help="video: score R frames per second of stream time")
    p.add_argument("--queue", type=positive_count, default=None, metavar="N",
                   help="frames held between decoding and scoring (default 4); a live source drops the oldest "
                        "when it is full (counted), a hot folder or a video file waits")
    p.add_argument("--realtime", action="store_true",
                   help="video file: deliver its frames at its own frame rate, as a camera would (then live: "
                        "the oldest frame is dropped when the model lags)")
    p.add_argument("--listen", action="store_true",
                   help="rtsp:// SOURCE: wait for an encoder or camera to push the stream to this address "
                        "instead of pulling it")
    p.add_argument("--move-to-verdict-folders", action="store_true",
                   help="hot folder: move each scored file to ok/ or defect/ inside it (never over another file)")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="hot folder: where what was scored is kept, so a restart neither repeats nor misses a "
                        "file (default FOLDER/.anomalens-watch.json)")
    p.add_argument("--settle", type=seconds, default=None, metavar="S",
                   help="hot folder: seconds a file's size must stay unchanged before it is read (default 0.5)")
    p.add_argument("--spool", default=None, metavar="DIR",
                   help="where the MQTT / webhook sinks keep verdicts while their peer is down")
    p.add_argument("--max-images", type=positive_count, default=None, metavar="N", help="stop after N images")
    p.add_argument("--duration", type=_rate, default=None, metavar="S", help="stop after S seconds")
    add_log_arguments(p)
    p.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace) -> None:
    from anomalens.line.watcher import DEFAULT_QUEUE, Watcher, summary_line

    options = {"every": args.every, "fps": args.fps, "realtime": args.realtime, "listen": args.listen,
               "state": args.state, "move_to_verdict_folders": args.move_to_verdict_folders,
               "settle_s": args.settle}
    watcher = Watcher(args.model, args.source, sinks=args.sink or ["jsonl"], runtime=args.runtime,
                      device=args.device, queue_size=args.queue or DEFAULT_QUEUE, max_images=args.max_images,
                      duration=args.duration, spool_dir=args.spool,
                      **{key: value for key, value in options.items() if value not in (None, False)})

    def stop(signum, frame) -> None:
        watcher.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    previous = {}
    for number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # only the main thread can take signals
            previous[number] = signal.signal(number, stop)
    try:
        summary = watcher.run()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print(f"anomalens: {summary_line(summary)}", file=sys.stderr)
