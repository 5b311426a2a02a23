"""Template search (SI 2.4) on a miniature PDB: shared structures as the mmCIF mirror, a
seqres FASTA built from them plus shuffled decoys. Hen lysozyme (1AKI) must find
alpha-lactalbumin (1HML, its ~40%-identical homolog), never itself, and respect dates."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import random
import shutil

import gemmi
import pytest

from foldray.api import predict
from foldray.features.pipeline import featurize_job
from foldray.inputs.af3_json import parse_job
from foldray.msa.template_search import (
    TemplateSearchSettings,
    build_profile,
    check_sources,
    read_seqres,
    search_database,
    search_templates,
    seqres_fasta,
)
from tests.data_paths import STRUCTURES

MIRROR_IDS = ("1aki", "1hml", "102m", "1ubq", "5zyh", "1k6p", "2rtg", "1ay7", "3o5r")


def _chains(pdb_id: str) -> list[tuple[str, str]]:
    st = gemmi.read_structure(str(STRUCTURES / f"{pdb_id}.cif"))
    st.setup_entities()
    out = []
    for chain in st[0]:
        polymer = chain.get_polymer()
        entity = st.get_entity_of(polymer) if polymer.length() else None
        if entity is not None and entity.polymer_type == gemmi.PolymerType.PeptideL:
            out.append((f"{pdb_id}_{chain.name}", gemmi.one_letter_code(entity.full_sequence)))
    return out


@pytest.fixture(scope="module")
def mini_pdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_pdb")
    mirror = root / "mirror"
    mirror.mkdir()
    entries = []
    for i, pdb_id in enumerate(MIRROR_IDS):
        source = STRUCTURES / f"{pdb_id}.cif"
        if i % 2:                                    # half the mirror gzipped, as PDB mirrors are
            with open(source, "rb") as raw, gzip.open(mirror / f"{pdb_id}.cif.gz", "wb") as packed:
                shutil.copyfileobj(raw, packed)
        else:
            shutil.copy(source, mirror / f"{pdb_id}.cif")
        entries += _chains(pdb_id)
    rng = random.Random(0)
    decoys = []
    for name, seq in entries:                       # same composition, no homology
        letters = list(seq)
        rng.shuffle(letters)
        decoys.append((f"9{name[1:4]}_Z", "".join(letters)))
    database = root / "pdb_seqres.txt"
    database.write_text(seqres_fasta(entries + decoys) + ">1bna_A mol:na length:12  DNA\nCGCGAATTCGCG\n")
    return TemplateSearchSettings(database=str(database), mirror=str(mirror))


def _lysozyme() -> str:
    ((_, sequence),) = _chains("1aki")
    return sequence


def test_the_homolog_is_found_and_the_query_itself_is_not(mini_pdb):
    with open(mini_pdb.database) as handle:
        seqres = read_seqres(handle.read())
    assert "1bna_A" not in seqres                       # nucleic-acid entries are not searched
    hits = search_database(build_profile(_lysozyme(), None), seqres)
    names = [hit.name for hit in hits]
    assert names[0] == "1aki_A" and "1hml_A" in names    # the raw search sees both
    templates = search_templates(_lysozyme(), None, mini_pdb)
    assert len(templates) >= 1
    template = templates[0]
    doc = gemmi.cif.read_string(template.mmcif)
    structure = gemmi.make_structure_from_block(doc.sole_block())
    assert [chain.name for chain in structure[0]] == ["A"]
    hml = dict(_chains("1hml"))["1hml_A"]
    query = _lysozyme()
    pairs = list(zip(template.query_indices, template.template_indices, strict=True))
    assert len(pairs) > 100
    identity = sum(query[q] == hml[t] for q, t in pairs) / len(pairs)
    assert 0.3 < identity < 0.6, identity                  # lysozyme vs alpha-lactalbumin, ~40%
    assert all(b > a for a, b in zip(template.query_indices, template.query_indices[1:], strict=False))


def test_the_date_cutoff_excludes_a_template_released_after_it(mini_pdb):
    before = dataclasses.replace(mini_pdb, max_template_date=dt.date(1995, 1, 1))   # 1HML: 1995-01-26
    after = dataclasses.replace(mini_pdb, max_template_date=dt.date(1995, 2, 1))
    hml = dict(_chains("1hml"))["1hml_A"]

    def found_hml(settings) -> bool:
        for template in search_templates(_lysozyme(), None, settings):
            chain = gemmi.make_structure_from_block(gemmi.cif.read_string(template.mmcif).sole_block())
            sequence = gemmi.one_letter_code([r.name for r in chain[0][0]])
            if sequence in hml or hml[20:60] in sequence:
                return True
        return False

    assert found_hml(after) and not found_hml(before)


def test_the_filled_job_featurizes_and_predicts(mini_pdb, tmp_path):
    templates = search_templates(_lysozyme(), None, mini_pdb)
    job = parse_job({"dialect": "alphafold3", "version": 3, "name": "lysozyme", "modelSeeds": [1],
                     "sequences": [{"protein": {
                         "id": "A", "sequence": _lysozyme(), "unpairedMsa": "", "pairedMsa": "",
                         "templates": [{"mmcif": t.mmcif, "queryIndices": list(t.query_indices),
                                        "templateIndices": list(t.template_indices)} for t in templates]}}]},
                    source=str(tmp_path / "lysozyme.json"))
    features = featurize_job(job).features
    assert features["template_pseudo_beta_mask"].shape[0] == len(templates)
    assert features["template_pseudo_beta_mask"][0].sum() > 100   # aligned residues with atoms
    prediction = predict(job, samples=1, steps=2, recycles=1)
    assert prediction.pae.shape == (129, 129) and "ranking_score" in prediction.summary


def test_a_missing_database_or_mirror_fails_at_start_naming_it(mini_pdb, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.fasta"):
        check_sources(dataclasses.replace(mini_pdb, database=str(tmp_path / "nowhere.fasta")))
    with pytest.raises(FileNotFoundError, match="no_mirror"):
        check_sources(dataclasses.replace(mini_pdb, mirror=str(tmp_path / "no_mirror")))
    check_sources(mini_pdb)


@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="the mmseqs binary is not installed")
def test_msa_command_runs_mmseqs2_then_the_template_search_and_caches_both(mini_pdb, tmp_path, capsys):
    """`foldray msa` with an MMseqs2 database and a `templates` section: the job comes back
    with an MSA and lysozyme's homolog as a template; a rerun serves both from the cache."""
    import json

    from foldray.inputs.load import read_jobs
    from foldray.jobs import msa as msa_job
    from tests.data_paths import SEQDB

    config = tmp_path / "msa.yaml"
    config.write_text(json.dumps({
        "databases": [{"name": "seqdb", "url": str(SEQDB / "protein_db.fasta"), "tool": "mmseqs2",
                       "max_sequences": 200}],
        "templates": {"database": mini_pdb.database, "mirror": mini_pdb.mirror},
        "shards": 2}))
    job = tmp_path / "lysozyme.json"
    job.write_text(json.dumps({"dialect": "alphafold3", "version": 3, "name": "lysozyme", "modelSeeds": [1],
                               "sequences": [{"protein": {"id": "A", "sequence": _lysozyme()}}]}))
    out = tmp_path / "out"
    for _ in range(2):
        argv = [str(job), "--out", str(out), "--config", str(config), "--no-ray", "--quiet"]
        assert msa_job.main(argv) == 0
    (filled,) = read_jobs(str(out / "lysozyme_data.json"))
    chain = filled.entities[0]
    assert chain.unpaired_msa.count(">") >= 2 and chain.unpaired_msa.splitlines()[1] == _lysozyme()
    assert chain.templates and len(chain.templates) <= 4
    first = gemmi.make_structure_from_block(gemmi.cif.read_string(chain.templates[0].mmcif).sole_block())
    assert first[0][0].name == "A"
    cached = list((out / "msa_cache").rglob("*")) if (out / "msa_cache").exists() else []
    assert any("templates-" in p.name for p in cached), [p.name for p in cached][:5]


def test_a_config_with_templates_fails_at_start_when_the_mirror_is_missing(mini_pdb, tmp_path):
    from foldray.errors import InputError
    from foldray.msa.config import config_from_dict
    from foldray.msa.databases import check_databases
    from tests.data_paths import SEQDB

    config = config_from_dict({"databases": [{"name": "seqdb", "url": str(SEQDB / "protein_db.fasta")}],
                               "templates": {"database": mini_pdb.database,
                                             "mirror": str(tmp_path / "no_such_mirror")}})
    with pytest.raises(InputError, match="no_such_mirror"):
        check_databases(config)


def _has_hml(templates) -> bool:
    """Whether α-lactalbumin (1HML) is among the templates (matched by its sequence)."""
    hml = dict(_chains("1hml"))["1hml_A"]
    for template in templates or ():
        chain = gemmi.make_structure_from_block(gemmi.cif.read_string(template.mmcif).sole_block())
        if hml[20:60] in gemmi.one_letter_code([r.name for r in chain[0][0]]):
            return True
    return False


def test_a_jobs_own_cutoff_overrides_the_runs_and_keys_the_cache(mini_pdb, tmp_path):
    """`maxTemplateDate` in the AF3 JSON job (foldray extension): before 1HML's release
    (1995-01-26) it drops the homolog, after it a job gets it despite an earlier run
    cutoff; each effective cutoff is its own cache entry, and a rerun reads them back."""
    from foldray.msa.cache import MsaCache
    from foldray.msa.config import config_from_dict
    from foldray.msa.fill import ChainSearcher, fill_jobs
    from foldray.msa.search import LocalShards

    def job(name: str, date: str | None):
        extra = {"maxTemplateDate": date} if date else {}
        return parse_job({"dialect": "alphafold3", "version": 1, "name": name, "modelSeeds": [1],
                          "sequences": [{"protein": {"id": "A", "sequence": _lysozyme()}}], **extra})

    def run(run_cutoff: str | None, jobs, cache):
        templates = {"database": mini_pdb.database, "mirror": mini_pdb.mirror}
        config = config_from_dict({"databases": [{"name": "pdb", "url": mini_pdb.database}],
                                   "templates": templates | ({"max_template_date": run_cutoff}
                                                             if run_cutoff else {})})
        return [_has_hml(j.entities[0].templates)
                for j in fill_jobs(jobs, ChainSearcher(config, LocalShards(1), cache))]

    cache = MsaCache(str(tmp_path / "cache"))
    jobs = [job("early", "1995-01-01"), job("late", "1995-02-01"), job("run", None)]
    assert jobs[0].max_template_date == "1995-01-01"
    assert run(None, jobs, cache) == [False, True, True]         # the job's cutoff, else none
    assert run("1990-01-01", jobs, cache) == [False, True, False]    # the job's beats the run's
    keys = {p.name for p in (tmp_path / "cache").rglob("templates-*")}
    assert len(keys) == 4                    # one per effective cutoff: 1995-01-01, 1995-02-01, none, 1990
    hits_before = cache.hits
    assert run(None, jobs, cache) == [False, True, True] and cache.hits > hits_before


@pytest.mark.parametrize(("value", "message"), [
    (19950101, "expected a date string YYYY-MM-DD or null, got an integer 19950101"),
    ("1995-13-01", "expected a date YYYY-MM-DD, got '1995-13-01'"),
    ("26/01/1995", "expected a date YYYY-MM-DD, got '26/01/1995'"),
    ("1995-W04-4", "expected a date YYYY-MM-DD, got '1995-W04-4'"),
])
def test_a_bad_job_cutoff_is_a_located_input_error(value, message):
    from foldray.errors import InputError

    with pytest.raises(InputError) as caught:
        parse_job({"dialect": "alphafold3", "version": 1, "name": "lyso", "modelSeeds": [1],
                   "maxTemplateDate": value, "sequences": [{"protein": {"id": "A", "sequence": "MKV"}}]},
                  source="jobs/lyso.json")
    text = str(caught.value)
    assert message in text and "maxTemplateDate" in text and "jobs/lyso.json" in text and "lyso" in text
