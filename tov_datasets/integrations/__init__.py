"""Optional pipeline integrations; each module imports its framework and names its extra:

- `tov_datasets.integrations.datatrove`: `ToVScoreStep`, `ToVSelectFilter` (``tov[datatrove]``)
- `tov_datasets.integrations.datajuicer`: the Data-Juicer filter op ``tov_filter``
  (``tov[datajuicer]``)
"""


def missing_extra(framework: str, extra: str, error: ImportError) -> ImportError:
    """The ImportError an integration raises when its framework is not installed."""
    return ImportError(
        f"this integration needs {framework}, which is not installed ({error}); "
        f"install it with: pip install 'tov[{extra}]'"
    )
