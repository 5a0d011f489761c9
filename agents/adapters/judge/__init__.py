"""The code that runs confined, on either side of the judgment: the candidate's process
(candidate.py) and the tests' harness (harness.py), and what passes between them (wire.py).

Standard library only, besides pytest in the harness, and only relative imports inside the
package: agents/adapters/sandbox.py copies it into the sandbox's read-only runtime
directory, where it is imported under another name, outside the project.
"""
