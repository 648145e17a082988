"""A real browser for the console tests: headless Chromium driven by Selenium.

The Rust test writes one JSON command per line on stdin and reads one JSON answer
per line on stdout, so the test tells the story (and counts what the provider got)
while every page is loaded, clicked and typed into by Chromium itself.

Usage: console_browser.py BASE_URL SCREENSHOT_DIR
Debian's chromium and chromium-driver are used explicitly: Selenium Manager cannot
download anything on the machines the tests run on.
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1366,900"):
        options.add_argument(argument)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver


def page(driver):
    return {"title": driver.title, "url": driver.current_url}


def run(driver, base, shots, command):
    op = command["op"]
    if op == "get":
        driver.get(base + command["path"])
        return page(driver)
    if op == "type":
        element = driver.find_element(By.CSS_SELECTOR, command["css"])
        element.clear()
        element.send_keys(command["text"])
        return {}
    if op == "keys":
        # Typed into whatever has the focus, as a keyboard user would; "\n" is Enter
        # and "\t" is Tab.
        keys = command["text"].replace("\n", Keys.ENTER).replace("\t", Keys.TAB)
        before = driver.current_url
        webdriver.ActionChains(driver).send_keys(keys).perform()
        if "\n" in command["text"]:
            # Enter submits a form: wait for the page it leads to.
            WebDriverWait(driver, 15).until(lambda d: d.current_url != before)
        return page(driver)
    if op == "focused":
        element = driver.switch_to.active_element
        return {"tag": element.tag_name, "text": element.text,
                "name": element.get_attribute("name") or ""}
    if op == "click":
        element = driver.find_element(By.CSS_SELECTOR, command["css"])
        navigates = element.tag_name in ("a", "button")
        element.click()
        if navigates:
            # A link or a form's button loads another page: wait until this one is gone.
            WebDriverWait(driver, 15).until(expected_conditions.staleness_of(element))
        return page(driver)
    if op == "count":
        return {"count": len(driver.find_elements(By.CSS_SELECTOR, command["css"]))}
    if op == "text":
        # Read in one script, so a page that reloads itself (a replay's progress)
        # cannot swap its elements between finding and reading them; a read that
        # meets the reload itself is tried again.
        for _ in range(20):
            try:
                text = driver.execute_script(
                    "return Array.from(document.querySelectorAll(arguments[0]))"
                    ".map(e => e.innerText).join('\\n')", command["css"])
                return {"text": text}
            except WebDriverException:
                time.sleep(0.1)
        raise RuntimeError(f"{command['css']} could not be read while the page reloaded")
    if op == "source":
        return {"html": driver.page_source}
    if op == "screenshot":
        path = os.path.join(shots, command["name"] + ".png")
        # The whole page, however long, at the laptop window's width.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1366, max(900, min(int(height) + 120, 4000)))
        driver.save_screenshot(path)
        driver.set_window_size(1366, 900)
        return {"path": path}
    if op == "craft_post":
        # A form the page does not offer, posted with the session's own CSRF token:
        # what a read key could try by hand.
        driver.execute_script(
            """
            const [action, fields] = arguments;
            const form = document.createElement('form');
            form.method = 'post';
            form.action = action;
            const add = (name, value) => {
              const input = document.createElement('input');
              input.type = 'hidden'; input.name = name; input.value = value;
              form.appendChild(input);
            };
            add('csrf', document.querySelector('input[name=csrf]').value);
            for (const [name, value] of Object.entries(fields)) add(name, value);
            document.body.appendChild(form);
            form.submit();
            """,
            command["action"], command.get("fields", {}))
        return {}
    raise ValueError(f"unknown op {op!r}")


def main():
    base, shots = sys.argv[1], sys.argv[2]
    os.makedirs(shots, exist_ok=True)
    driver = browser()
    try:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "quit":
                break
            try:
                answer = run(driver, base, shots, command)
            except Exception as error:  # the test prints it and fails
                answer = {"error": f"{type(error).__name__}: {error}"}
            print(json.dumps(answer), flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
