"""Raw loopback TCP throughput: python3 loopback.py BYTES. Prints MB/s (10^6 bytes per second).

One sender thread, one receiver, 1 MiB buffers: the physical limit FTP transfers are measured
against.
"""
import socket
import sys
import threading
import time

CHUNK = 1 << 20


def send(port, total):
    with socket.create_connection(("127.0.0.1", port)) as s:
        buf = b"\0" * CHUNK
        left = total
        while left > 0:
            left -= s.send(buf[: min(CHUNK, left)])


def main():
    total = int(sys.argv[1])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = threading.Thread(target=send, args=(listener.getsockname()[1], total))
        start = time.perf_counter()
        sender.start()
        conn, _ = listener.accept()
        buf = bytearray(CHUNK)
        got = 0
        with conn:
            while got < total:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                got += n
        elapsed = time.perf_counter() - start
        sender.join()
    print(f"{got / elapsed / 1e6:.0f}")


if __name__ == "__main__":
    main()
