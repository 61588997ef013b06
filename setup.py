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
        # Capped below the next major: 26.x is the newest the suite has passed,
        # and twistedinternals.py leans on private API a release may change.
        "twisted[tls]>=24.7,<27",
        "dulwich>=0.21",
        "service-identity>=21.1.0",
        "pyopenssl>=23.0",
        "bcrypt>=4.0",
        # The access rules' regular expressions, with a time bound per match.
        "regex>=2022.1.18",
        # The browser pages: READMEs (raw HTML off) and syntax highlighting,
        # both turned into twisted.web.template tags from their tokens.
        "markdown-it-py>=3.0",
        "pygments>=2.15",
        # --metrics: the exposition format, process metrics and the Twisted
        # resource that serves them.
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            # The packaging test builds without isolation (no network needed).
            "wheel",
            # Runs the tests in a random order, so one that leans on another's
            # leftovers fails.
            "pytest-randomly>=3.15",
            # The CI gates (.ci/run). Pinned to a minor series: a new ruff
            # reformats or adds findings, and each mypy-zope release supports
            # only the mypy releases up to its own (1.0.17: mypy < 2.5).
            "ruff>=0.17,<0.18",
            "mypy>=2.4,<2.5",
            "mypy-zope>=1.0.17,<1.1",
        ],
    },
    entry_points={
        "console_scripts": [
            "gitserve-export = gitserve.export:main",
            "gitserve-access = gitserve.accesscli:main",
        ],
    },
)
