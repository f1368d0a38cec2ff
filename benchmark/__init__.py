"""The ardrag benchmark: metrics (``benchmark.metrics``), suites (``benchmark.suites``), method adapters
(``benchmark.methods``), the eval runner ``ardrag-eval`` (``benchmark.eval``) and its tables
(``benchmark.tables``). It never imports training code: methods are seen through a generator interface or a
folder of videos."""
