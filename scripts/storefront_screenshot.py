"""Take the README's screenshot of the demo storefront (after `make demo`):

    .venv/bin/python scripts/storefront_screenshot.py --out docs/storefront.png

A new shopper lands on the most popular item, follows the first card ``--clicks`` times,
and the page is saved with the unpersonalized row beside the personalized one. Uses
Debian's Chromium headless (`make browser` installs it), as the browser test does.
"""

from __future__ import annotations

import argparse
import os

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/demo", help="the demo page")
    parser.add_argument("--out", default="docs/storefront.png", help="the PNG to write")
    parser.add_argument("--clicks", type=int, default=2, help="cards followed (default 2)")
    args = parser.parse_args()
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)

    def ready() -> None:
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
        )

    try:
        driver.get(args.url)
        ready()
        driver.find_element(By.ID, "compare").click()
        for _ in range(args.clicks):
            page = driver.current_url
            driver.find_element(By.CSS_SELECTOR, "#personal-cards a").click()
            WebDriverWait(driver, 30).until(lambda d, page=page: d.current_url != page)
            ready()
        driver.save_screenshot(args.out)
        status = driver.find_element(By.ID, "personal-status").text
        print(f"{args.out}: {driver.current_url} ({status})")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
