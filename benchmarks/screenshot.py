"""A picture of a tree page for the docs, taken in headless Chromium (Debian's chromium
and chromium-driver, as the browser tests use).

    python benchmarks/screenshot.py tree.html docs/quick_start_tree.png [--width 1400]

Why a script: the README's pictures are remade from a real run by one command, not by
hand. The page opens with the chosen path's last node shown in its panel (its tokens
tinted by confidence); ``--node N`` shows node N instead.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=pathlib.Path, help="an HTML file (show_tree, --tree-html)")
    parser.add_argument("png", type=pathlib.Path, help="the picture to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--node", type=int, help="the node to show in the panel")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 f"--window-size={args.width},{args.height}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        browser.get(args.page.resolve().as_uri())
        if args.node is not None:
            browser.find_element(By.CSS_SELECTOR,
                                 f'svg .tree-node[data-id="{args.node}"]').click()
        time.sleep(0.5)  # the picture's layout settles
        browser.save_screenshot(str(args.png))
    finally:
        browser.quit()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
