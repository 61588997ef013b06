"""Packaging for gitserve: the library, the twistd plugin and the console scripts."""

from setuptools import find_packages, setup

setup(
    name="gitserve",
    version="0.1.0",
    description="An event-driven git server daemon for smart and dumb HTTP(S), as a twistd plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # "twisted.plugins" is listed by hand: it is a namespace shared with Twisted
    # itself, so it must not hold an __init__.py and find_packages() would miss it.
    packages=[*find_packages(include=["gitserve", "gitserve.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["gitserve_plugin.py", "gitserve_htpasswd.py"]},
    install_requires=[
        # 24.7.0 fixed request smuggling and pipelining bugs in twisted.web.
        "twisted[tls]>=24.7.0",
        "dulwich>=0.21",
        "service-identity>=21.1.0",
        "pyopenssl>=23.0",
        "bcrypt>=4.0",
        # The browser pages: READMEs (raw HTML off) and syntax highlighting,
        # both turned into twisted.web.template tags from their tokens.
        "markdown-it-py>=3.0",
        "pygments>=2.15",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            # The packaging test builds without isolation (no network needed).
            "wheel",
        ],
    },
    entry_points={
        "console_scripts": [
            "gitserve-export = gitserve.export:main",
        ],
    },
)
