"""MkDocs hooks (mkdocs.yml `hooks:`): the parts of the manual that are generated at build time.

- `<!-- config-reference -->` becomes what `stdistill.config.config_help()` returns (the keys,
  defaults and meanings that `stdistill train --help` prints), so the reference cannot drift
  from the code.
- `<!-- include: FILE -->` becomes FILE, a Markdown file at the repository root (README.md,
  RESULTS.md, BENCHMARKS.md), with its relative links re-aimed from the root to the page: a
  target under docs/ or a root file that a page includes becomes a link within the site, any
  other file of the repository its plain text.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

CONFIG_MARKER = '<!-- config-reference -->'
INCLUDE = re.compile(r'<!-- include: (\S+) -->')
LINK = re.compile(r'(!?)\[([^\]]*)\]\(([^)\s]+)\)')

included = {}  # a root file's absolute path -> the absolute path of the page that includes it


def config_reference(root: str) -> str:
    """`config_help()` of this checkout's src/, in a fresh interpreter (`mkdocs serve` rebuilds
    pick up an edited config.py)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(root, 'src'),
                                                                      os.environ.get('PYTHONPATH')])))
    text = subprocess.run([sys.executable, '-c', 'from stdistill.config import config_help; print(config_help())'],
                          cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    return f'```text\n{text.rstrip()}\n```'


def include(root: str, docs_dir: str, page_dir: str, name: str) -> str:
    """The root file `name`, its relative links re-aimed at `page_dir` (a folder under docs_dir)."""
    with open(os.path.join(root, name), encoding='utf-8') as f:
        text = f.read()

    def reaim(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r'[a-z][a-z0-9+.-]*:|#', target):  # a URL or an anchor of this page
            return match.group(0)
        path, _, anchor = target.partition('#')
        absolute = included.get(os.path.normpath(os.path.join(root, path)),
                                os.path.normpath(os.path.join(root, path)))
        if os.path.commonpath([absolute, docs_dir]) != docs_dir:
            return f'`{path}`' if bang else label
        relative = os.path.relpath(absolute, page_dir).replace(os.sep, '/')
        return f'{bang}[{label}]({relative}{"#" + anchor if anchor else ""})'

    return LINK.sub(reaim, text)


def on_files(files, config):
    """Which page includes which root file, so that links to that file land on its page."""
    root = os.path.dirname(os.path.abspath(config['config_file_path']))
    included.clear()
    for file in files.documentation_pages():
        with open(file.abs_src_path, encoding='utf-8') as f:
            for name in INCLUDE.findall(f.read()):
                included[os.path.normpath(os.path.join(root, name))] = os.path.abspath(file.abs_src_path)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    root = os.path.dirname(os.path.abspath(config['config_file_path']))
    docs_dir = os.path.abspath(config['docs_dir'])
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference(root))
    page_dir = os.path.dirname(os.path.abspath(page.file.abs_src_path))
    return INCLUDE.sub(lambda m: include(root, docs_dir, page_dir, m.group(1)), markdown)
