"""spaCy as Presidio's NLP engine, with the NER component only.

Imported lazily (by tasks.pii.engines.nlp_engine): loading spaCy and Presidio's NLP engine takes
seconds, and the key, the spec and the pseudonyms need neither. With the gate (tasks.pii.gate) the
NER reads only the sentences it keeps; Presidio still gets tokens for the whole text, so context
words anywhere count.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import spacy
from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
from spacy.util import filter_spans

if TYPE_CHECKING:
    from tasks.pii.gate import NerGate

# spaCy labels → Presidio entities; everything else the model emits is dropped.
NER_MAPPING = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
NER_IGNORED = [
    "ORG",
    "NORP",
    "DATE",
    "TIME",
    "CARDINAL",
    "ORDINAL",
    "MONEY",
    "PERCENT",
    "QUANTITY",
    "PRODUCT",
    "EVENT",
    "LAW",
    "LANGUAGE",
    "WORK_OF_ART",
]
# Only the NER component is needed: Presidio reads doc.ents and tokens; the pipeline's own
# tok2vec feeds tagger/parser only (the NER has an embedded one), so these can all go.
_SPACY_EXCLUDE = ["tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer"]


class NerOnlySpacyEngine(SpacyNlpEngine):
    """spaCy with the NER component only; never downloads a model."""

    def load(self) -> None:
        self.nlp = {}
        for m in self.models:
            name = m["model_name"]
            if not (spacy.util.is_package(name) or Path(name).exists()):
                raise RuntimeError(
                    f"spaCy model '{name}' is not installed (mask.nlp_model in the recognizers YAML); "
                    "install it with requirements-models.txt — the pipeline never downloads models"
                )
            self.nlp[m["lang_code"]] = spacy.load(name, exclude=_SPACY_EXCLUDE)

    def _doc_to_nlp_artifact(self, doc, language):
        # Without the lemmatizer lemma_ is empty; the lower-cased token is what Presidio's
        # context matching ("phone", "ssn", "dob") needs.
        entities, scores = self._get_updated_entities(
            doc.ents, [self.ner_model_configuration.default_score] * len(doc.ents)
        )
        # One pass over the tokens. `tokens` as plain strings: Presidio's context enhancer
        # only iterates them and takes their len(), and walking a spaCy Doc builds a
        # Token object per step, for every finding.
        words, starts, lemmas = [], [], []
        for t in doc:
            words.append(t.text)
            starts.append(t.idx)
            lemmas.append(t.lemma_ or t.lower_)
        # nlp_engine=None skips NlpArtifacts' own keyword pass (two vocab look-ups per
        # token, every text); _keywords computes them from a per-word memo instead.
        artifacts = NlpArtifacts(
            entities=entities,
            tokens=words,
            tokens_indices=starts,
            lemmas=lemmas,
            nlp_engine=None,
            language=language,
            scores=scores,
        )
        artifacts.nlp_engine = self
        artifacts.keywords = self._keywords(lemmas, language)
        return artifacts

    def process_gated(self, texts: list[str], language: str, batch_size: int, gate: NerGate):
        """(text, NlpArtifacts) per text, like process_batch, with the NER run only on the
        gate's segments (one nlp.pipe over all of them); tokens cover the whole text, so
        context words anywhere still count."""
        nlp = self.nlp[language]
        jobs = [(i, s, e) for i, text in enumerate(texts) for s, e in gate.segments(text)]
        ents: list[list] = [[] for _ in texts]
        if jobs:
            seg_docs = nlp.pipe([texts[i][s:e] for i, s, e in jobs], batch_size=batch_size)
            for (i, s, _), seg in zip(jobs, seg_docs, strict=True):
                ents[i] += [(s + ent.start_char, s + ent.end_char, ent.label_) for ent in seg.ents]
        for text, found in zip(texts, ents, strict=True):
            doc = nlp.make_doc(text)
            spans = [doc.char_span(a, b, label=label, alignment_mode="expand") for a, b, label in found]
            doc.ents = filter_spans([sp for sp in spans if sp is not None])
            yield text, self._doc_to_nlp_artifact(doc, language)

    context_words: frozenset = frozenset()

    def add_context_words(self, words) -> None:
        words = frozenset(w.lower() for w in words)
        if not words <= self.context_words:
            self.context_words = self.context_words | words
            self.__dict__.pop("_keyword_memo", None)

    def _keywords(self, lemmas, language):
        # NlpArtifacts.set_keywords, memoised per word, with one change: a recognizer's
        # own context word counts even when spaCy lists it as a stop word ("call", as in
        # "call me at ..."), or that context could never match.
        memo = self.__dict__.setdefault("_keyword_memo", {})
        if len(memo) > 200_000:
            memo.clear()
        out = []
        for k in lemmas:
            pieces = memo.get(k)
            if pieces is None:
                keep = k.lower() in self.context_words or (
                    not self.is_stopword(k, language) and not self.is_punct(k, language) and k != "-PRON-" and k != "be"
                )
                pieces = memo[k] = k.lower().split(":") if keep else []
            out += pieces
        return out


def load_engine(model: str, language: str) -> NerOnlySpacyEngine:
    """The engine for one spaCy model and language, loaded (tasks.pii.engines keeps one per process)."""
    ner = NerModelConfiguration(model_to_presidio_entity_mapping=NER_MAPPING, labels_to_ignore=NER_IGNORED)
    engine = NerOnlySpacyEngine(models=[{"lang_code": language, "model_name": model}], ner_model_configuration=ner)
    engine.load()
    return engine
