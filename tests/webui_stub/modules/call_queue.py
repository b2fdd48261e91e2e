"""Stand-in of modules/call_queue.py."""

import threading

queue_lock = threading.Lock()
