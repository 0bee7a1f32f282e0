"""The embedded client in ten lines: the same code runs on the gateway later."""

import prism

with prism.open() as db:  # ./prism.yaml if present, else SQLite in ./prism-data/
    users = db.keyvalue("users")
    users.put_items("user:1", {b"name": b"Ada Lovelace", b"lang": b"en"})
    users.put_items("user:2", [prism.Item(b"name", b"Grace Hopper")])
    print(users.get_items("user:1").as_dict())
    print(users.get_items("user:1", prism.Keys([b"name"])).items[0].value)
    print(users.scan().record_ids)
