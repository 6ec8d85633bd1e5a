"""People review the judge: confirm or flip its verdicts in the terminal (`rlaif review`, a Textual app), or in
Label Studio / Argilla through export and import; the labels train the rounds beside the AI's (hybrid labels).

    labels.py     the labels file, the one-reviewer lock, ordering, agreement, applying labels to pairs
    exchange.py   export to and import from Label Studio, Argilla and plain JSON Lines
    app.py        the terminal app (imports textual)
"""
