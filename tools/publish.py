"""Point every Binder and Colab link of the series at one GitHub repository and branch.

The address is written in one place, ``[project.urls] Repository`` in pyproject.toml. This command
writes it there and copies it into the README's two badges and every notebook's Colab cell:

    python tools/publish.py you/your-fork                  # branch main
    python tools/publish.py you/your-fork --branch spring-class
    python tools/publish.py --check                        # exit 1 if a link differs from pyproject.toml

Standard library only, so it runs before anything is installed.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = re.compile(r'^Repository = "https://github\.com/([\w.-]+/[\w.-]+)/tree/([\w./-]+)"$', re.M)
# what each link looks like, with the slug and the branch as the groups to replace
README_LINKS = [re.compile(r"(mybinder\.org/v2/gh/)([\w.-]+/[\w.-]+)/([\w./-]+?)(\?)"),
                re.compile(r"(colab\.research\.google\.com/github/)([\w.-]+/[\w.-]+)/blob/([\w./-]+?)"
                           r"(/notebooks/)")]
COLAB_LINE = re.compile(r'(REPO, BRANCH, ROOT = ")([^"]*)(", ")([^"]*)(")')


def read_address(root: Path = ROOT) -> tuple[str, str]:
    """The repository ``owner/name`` and branch that pyproject.toml names."""
    found = ADDRESS.search((root / "pyproject.toml").read_text(encoding="utf-8"))
    if not found:
        raise SystemExit('pyproject.toml: no line `Repository = "https://github.com/OWNER/REPO/tree/BRANCH"`')
    return found.group(1), found.group(2)


def rewritten(root: Path, slug: str, branch: str) -> dict[Path, str]:
    """Every file that carries the address, with its text as it should be for ``slug`` and ``branch``."""
    texts = {}
    pyproject = root / "pyproject.toml"
    texts[pyproject] = ADDRESS.sub(f'Repository = "https://github.com/{slug}/tree/{branch}"',
                                   pyproject.read_text(encoding="utf-8"))
    readme = (root / "README.md").read_text(encoding="utf-8")
    for link in README_LINKS:
        readme = link.sub(lambda m: f"{m.group(1)}{slug}/{'blob/' if 'colab' in m.group(1) else ''}"
                                    f"{branch}{m.group(4)}", readme)
    texts[root / "README.md"] = readme
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cell = notebook["cells"][1]  # the Colab cell, right after the title
        source = COLAB_LINE.sub(lambda m: f"{m.group(1)}{slug}{m.group(3)}{branch}{m.group(5)}",
                                "".join(cell["source"]))
        cell["source"] = source.splitlines(keepends=True)
        texts[path] = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slug", nargs="?", help="owner/name of the GitHub repository")
    parser.add_argument("--branch", default="main", help="the branch Binder and Colab open (main)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if links differ")
    args = parser.parse_args()
    if args.check:
        slug, branch = read_address()
    elif not args.slug or not re.fullmatch(r"[\w.-]+/[\w.-]+", args.slug):
        parser.error("give the repository as owner/name, e.g. you/pixels-to-batches")
    else:
        slug, branch = args.slug, args.branch
    changed = []
    for path, text in rewritten(ROOT, slug, branch).items():
        if path.read_text(encoding="utf-8") != text:
            changed.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    names = ", ".join(str(path.relative_to(ROOT)) for path in changed) or "nothing"
    if args.check:
        if changed:
            sys.exit(f"links differ from {slug} ({branch}) in: {names}; run tools/publish.py to fix them")
        print(f"all links: {slug} ({branch})")
        return
    print(f"pointed at {slug} ({branch}): {names}")


if __name__ == "__main__":
    main()
