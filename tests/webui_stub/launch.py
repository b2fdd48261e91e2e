"""A stand-in for the WebUI's ``launch`` module, as install.py sees it (v1.10.1 launch_utils).

``run_pip`` runs ``"<python>" -m pip <args> --prefer-binary [--index-url $INDEX_URL]`` through
the shell and raises RuntimeError on failure, like the real one; ``is_installed`` checks
importlib.metadata then find_spec. Each run_pip call is appended to $WEBUI_STUB_PIP_LOG so tests
can count them.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")
args = argparse.Namespace(skip_install=False)


def is_installed(package):
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.util.find_spec(package) is not None
        except ModuleNotFoundError:
            return False


def run(command, desc=None, errdesc=None, custom_env=None, live=False):
    if desc:
        print(desc, flush=True)
    result = subprocess.run(command, shell=True, env=os.environ if custom_env is None else custom_env,
                            stdout=None if live else subprocess.PIPE, stderr=None if live else subprocess.PIPE,
                            text=True)
    if result.returncode != 0:
        message = (f"{errdesc or 'Error running command'}.\nCommand: {command}\nError code: {result.returncode}\n"
                   f"stdout: {result.stdout or '<empty>'}\nstderr: {result.stderr or '<empty>'}")
        raise RuntimeError(message)
    return result.stdout or ""


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return
    log = os.environ.get("WEBUI_STUB_PIP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(command + "\n")
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    return run(f'"{python}" -m pip {command} --prefer-binary{index_url_line}', desc=f"Installing {desc}",
               errdesc=f"Couldn't install {desc}", live=live)
