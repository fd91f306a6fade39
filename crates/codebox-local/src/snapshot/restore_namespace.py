# Runs silently inside a fresh Python kernel when its box resumes: re-imports the modules
# the namespace held, loads each saved variable back, and writes what came back and what did
# not to `<d>/<ctx>.resumed.json`. The saved files are removed once read.
def __codebox_restore_namespace(d, ctx):
    import importlib, json, os, pickle

    ns = get_ipython().user_ns  # noqa: F821 (the kernel's own)
    meta_path, blobs_path = os.path.join(d, ctx + ".json"), os.path.join(d, ctx + ".pkl")
    with open(meta_path) as f:
        meta = json.load(f)
    out = {"imports": [], "variables": [], "unrestored": []}

    def lost(name, type_name, reason):
        out["unrestored"].append({"name": name, "type": type_name, "reason": reason})

    for name, module in meta["imports"].items():
        try:
            ns[name] = importlib.import_module(module)
            out["imports"].append(name + "=" + module)
        except Exception as e:  # a module gone from the environment is named, not fatal
            lost(name, "module", "import %s failed: %s: %s" % (module, type(e).__name__, e))
    pickler = pickle
    if meta["pickler"] == "dill":
        try:
            import dill as pickler
        except ImportError:
            pickler = None
    with open(blobs_path, "rb") as f:
        blobs = pickle.load(f)
    types = meta.get("types", {})
    for name, blob in blobs.items():
        if pickler is None:
            lost(name, types.get(name, "?"), "saved with dill, which this kernel's Python lacks")
            continue
        try:
            ns[name] = pickler.loads(blob)
            out["variables"].append(name)
        except Exception as e:  # each variable stands alone: one failure costs only itself
            lost(name, types.get(name, "?"), "does not load: %s: %s" % (type(e).__name__, str(e)[:200]))
    del blobs
    os.remove(blobs_path)
    os.remove(meta_path)
    with open(os.path.join(d, ctx + ".resumed.json"), "w") as f:
        json.dump(out, f)
