"""pyftpdlib for bench/compare.sh: python3 pyftpd.py MODE PORT ROOT USER PASS.

MODE is async (FTPServer), thread (ThreadedFTPServer) or process (MultiprocessFTPServer).
"""
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer, MultiprocessFTPServer, ThreadedFTPServer

SERVERS = {"async": FTPServer, "thread": ThreadedFTPServer, "process": MultiprocessFTPServer}


def main():
    mode, port, root, user, password = sys.argv[1:6]
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, root, perm="elradfmwMT")
    handler = FTPHandler
    handler.authorizer = authorizer
    handler.banner = "pyftpdlib ready"
    server = SERVERS[mode](("127.0.0.1", int(port)), handler)
    server.max_cons = 0
    server.max_cons_per_ip = 0
    server.serve_forever()


if __name__ == "__main__":
    main()
