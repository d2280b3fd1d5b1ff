"""Pure plotting functions, one module per topic: data in, plotly figure out (testable without a browser)."""
