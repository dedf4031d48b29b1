"""The one DocBook paragraph parser that the clm data (German) and the reasoning data (multilingual ARC) share."""
from __future__ import annotations

from dume_exp.zoo import clm_data
from dume_exp.zoo.html_text import html_paragraphs
from dume_exp.zoo.reasoning import arc

GERMAN = ("Die Administratoren installieren die Pakete mit dem Werkzeug, das die Abhängigkeiten "
          "automatisch auflöst und die Software aktuell hält.")
ENGLISH = "This paragraph was not translated and is still written in English, so the filter drops it."


def test_both_data_builders_use_it():
    assert clm_data.html_paragraphs is arc.html_paragraphs is html_paragraphs


def test_paragraph_text():
    html = (f'<html><body><div class="titlepage">Titel</div><div class="para">\n\t\t{GERMAN[:40]}'
            f'<span class="emphasis"><em>{GERMAN[40:]}</em></span>\n\t</div>'
            '<div class="para">Befehl: <pre class="screen">$ apt update</pre> fertig &amp; gut</div>'
            f'<div class="note"><div class="para">{ENGLISH}<div class="url">https://x.org</div></div></div>'
            '</body></html>')
    assert html_paragraphs(html) == [GERMAN, "Befehl: fertig & gut", ENGLISH + "https://x.org"]


def test_nesting_classes_empty_blocks_and_stray_end_tags():
    html = ('</div></pre><div class="para">outer <div class="para">inner</div> tail</div>'
            '<div class="para note">two classes</div><div class="parameter">not a para</div>'
            '<div class="para"> <pre>only a screen</pre> </div><div class="para">after</div>')
    assert html_paragraphs(html) == ["outer inner tail", "two classes", "after"]
