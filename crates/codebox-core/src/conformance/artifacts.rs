//! The conformance check of the files an execution lists as its artifacts. It runs the
//! Dialect's snippets, so it holds for a box of any language; saving a matplotlib figure is
//! checked with Python's only.

use super::{CheckOutcome, Checked, Dialect, ensure, exec};
use crate::{ArtifactChange, CodeBox, CodeBoxExt, Execution, RunOptions};

const TOP: &str = "conformance-artifact.txt";
const INNER: &str = "conformance-artifacts/inner.txt";

fn listed(ex: &Execution) -> Vec<(&str, ArtifactChange)> {
    ex.artifacts().iter().map(|a| (a.path.as_str(), a.change)).collect()
}

/// An execution that writes two files (one in a subdirectory) lists both as created; one
/// that writes nothing lists none; one that appends to a file lists it as changed; with
/// `save_images`, a matplotlib figure (Python only) becomes a listed PNG. A backend without
/// the capability lists nothing.
pub(super) async fn artifacts_listed(b: &dyn CodeBox, d: &Dialect) -> CheckOutcome {
    let wrote = exec(b, &d.write_two_artifacts).await?;
    ensure(wrote.is_ok(), || format!("writing two files failed: {wrote:?}"))?;
    if !b.capabilities().artifacts {
        ensure(wrote.artifacts().is_empty(), || {
            format!("a box without the artifacts capability listed {:?}", wrote.artifacts())
        })?;
        return Ok("artifacts unsupported".into());
    }
    let want = [(TOP, ArtifactChange::Created), (INNER, ArtifactChange::Created)];
    ensure(listed(&wrote) == want && !wrote.artifacts_truncated, || {
        format!("writing two files listed {:?} (truncated: {})", listed(&wrote), wrote.artifacts_truncated)
    })?;
    let sizes: Vec<u64> = wrote.artifacts().iter().map(|a| a.size).collect();
    ensure(sizes == [5, 6], || format!("the two files' sizes are {sizes:?}, not [5, 6]"))?;

    let nothing = exec(b, &d.x_plus_one).await?;
    ensure(nothing.artifacts().is_empty(), || {
        format!("an execution that wrote nothing listed {:?}", nothing.artifacts())
    })?;

    let appended = exec(b, &d.append_artifact).await?;
    ensure(listed(&appended) == [(TOP, ArtifactChange::Changed)], || {
        format!("appending to {TOP} listed {:?}", listed(&appended))
    })?;

    let mut note = "created, changed and none listed".to_owned();
    if d.python {
        note.push_str(&saved_figure(b).await?);
    }
    Ok(note)
}

/// With `save_images`, a matplotlib figure is saved as a PNG file listed among the artifacts.
async fn saved_figure(b: &dyn CodeBox) -> Checked<String> {
    let probe = exec(b, "import importlib.util\nprint(importlib.util.find_spec('matplotlib') is not None)").await?;
    if probe.stdout().trim() != "True" {
        return Ok("; matplotlib not installed: saved figures not checked".into());
    }
    let code =
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 3, 2])\nplt.show()";
    let ex = b
        .run(code, RunOptions::new().with_save_images(true))
        .await
        .map_err(|e| format!("a figure with save_images failed: {e}"))?;
    let pngs: Vec<&str> = ex.artifacts().iter().filter(|a| a.path.ends_with(".png")).map(|a| a.path.as_str()).collect();
    let [png] = pngs.as_slice() else {
        return Err(format!("a figure with save_images listed {:?}", listed(&ex)).into());
    };
    let bytes = b.download_bytes(png).await.map_err(|e| format!("downloading the saved figure {png}: {e}"))?;
    ensure(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), || format!("the saved figure {png} is not a PNG"))?;
    let quiet = exec(b, code).await?;
    ensure(quiet.artifacts().is_empty(), || format!("a figure without save_images listed {:?}", quiet.artifacts()))?;
    Ok(format!("; the figure saved as {png}"))
}
