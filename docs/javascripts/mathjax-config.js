// MathJax 3 settings for pymdownx.arithmatex (generic mode): typeset only what arithmatex marked.
// MathJax itself (tex-svg.js, Apache-2.0, version 3.2.2) ships with the docs, so maths renders offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
