"""Who may use the broker and how: broker users, their roles and ACL (``acl``), the files
Mosquitto reads (``credentials``: the user list, its password file and ACL), and TLS (``tls``:
a private CA, the broker's certificate, a listener). ``citybrain broker credentials`` drives
them all; ``configs/mosquitto/README.md`` is the operator's guide.
"""
