"""Simulate a crowd: viewers register and listen, senders tap emoji, the books are checked.

    python3 client_simulator.py                  # 20 viewers, 100 emoji/s for 30 s, then the books
    python3 client_simulator.py --classic        # the original: 5 threaded clients x 20 emoji
    python3 client_simulator.py --help           # every option

The crowd, its books and the report live in emostream/clients/.
"""

import sys

from emostream.clients.simulator import main

if __name__ == "__main__":
    sys.exit(main())
