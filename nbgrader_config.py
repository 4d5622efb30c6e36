"""nbgrader settings for teaching a class from the series (TEACHING.md, "Exercises a class can hand in").

The repository's ``notebooks/`` folder is the assignment ``notebooks``; everything nbgrader makes goes
to ``classroom/`` (not in git). From the repository's folder:

    nbgrader generate_assignment notebooks  # student copies, solutions removed: classroom/release/notebooks/
    nbgrader autograde notebooks            # grades classroom/submitted/<student>/notebooks/*.ipynb
    nbgrader export                         # the scores: classroom/grades.csv
"""

from pathlib import Path

c = get_config()  # noqa: F821 (nbgrader defines get_config when it reads this file)
# nbgrader opens the gradebook before it makes any folder: without classroom/ it fails with
# "unable to open database file" (sqlite), asking for `nbgrader db upgrade`, which does not help
Path("classroom").mkdir(exist_ok=True)

c.CourseDirectory.source_directory = "."  # so the source of assignment "notebooks" is notebooks/
c.CourseDirectory.release_directory = "classroom/release"
c.CourseDirectory.submitted_directory = "classroom/submitted"
c.CourseDirectory.autograded_directory = "classroom/autograded"
c.CourseDirectory.feedback_directory = "classroom/feedback"
c.CourseDirectory.db_url = "sqlite:///classroom/gradebook.db"
c.CsvExportPlugin.to = "classroom/grades.csv"  # students' grades stay out of git with the rest
# notebooks/ruff.toml (and ruff's cache) are the series' lint settings, not files for students
c.CourseDirectory.ignore.extend(["ruff.toml", ".ruff_cache"])  # to nbgrader's own (.ipynb_checkpoints, ...)

# A student copy runs top to bottom without errors: where the hidden solution was, a comment; each
# self-check then says "Not solved yet". Autograding restores the hidden `assert solved` lines.
c.ClearSolutions.code_stub = {
    "python": "# The solution is not in this copy: write yours in the cell under the exercise's title."}

# nbgrader stops a cell after 30 s; 06 trains for about that long on two cores, and longer on one. The
# same limit as the test command's (pyproject.toml, --nbval-cell-timeout).
c.Execute.timeout = 300
