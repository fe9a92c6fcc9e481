// Plotly figures fill the width of their output. Their scripts run while the page is still being parsed, before
// the page's columns have their final width: lay each figure out again once its box has its size, and whenever
// that size changes (window resized, sidebar toggled).
document.addEventListener("DOMContentLoaded", () => {
  if (!window.Plotly || !window.ResizeObserver) return;
  const observer = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const gd = entry.target.querySelector(":scope > .js-plotly-plot");
      if (gd && gd.offsetWidth) window.Plotly.Plots.resize(gd);
    }
  });
  document.querySelectorAll(".js-plotly-plot").forEach((gd) => observer.observe(gd.parentElement));
});
