# edgekit-model.bb: build a model with edgekit on the build host and install it as a C
# library plus the raw artifact, for images that compile a model into an application.
#
# Put the recipe, the factory module and the weights in files/ next to this .bb. edgekit runs
# natively (on the build host), so add a native Python with edgekit to the layer, e.g. a
# python3-edgekit-native recipe built from the wheel, or point EDGEKIT_PYTHON at a venv the
# build machine provides (not hermetic; fine for evaluation).

SUMMARY = "Keyword-spotting model compiled in with edgekit"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "file://kws.toml file://kws_net.py file://kws.pt"
S = "${WORKDIR}"

# python3-edgekit-native: your layer's native package of edgekit (see above).
DEPENDS = "python3-edgekit-native"
EDGEKIT_PYTHON ?= "${STAGING_BINDIR_NATIVE}/python3-native/python3"
EDGEKIT_TARGET ?= "arm64-tflite-fp32"

# Any change in these files changes the task signature, so bitbake rebuilds; otherwise the
# sstate cache is reused. edgekit's own cache goes to ${WORKDIR} (it must not escape it).
do_compile[file-checksums] += "${S}/kws.toml:True ${S}/kws_net.py:True ${S}/kws.pt:True"

do_compile() {
    export EDGEKIT_CACHE_DIR="${WORKDIR}/edgekit-cache"
    ${EDGEKIT_PYTHON} -m edgekit build --recipe ${S}/kws.toml --target ${EDGEKIT_TARGET} \
        --out ${B}/bundle --quiet
    ${EDGEKIT_PYTHON} -m edgekit verify ${B}/bundle --target ${EDGEKIT_TARGET}
    ${EDGEKIT_PYTHON} -m edgekit embed ${B}/bundle --target ${EDGEKIT_TARGET} \
        --name kws_model --out ${B}/gen
    ${CC} ${CFLAGS} -c ${B}/gen/kws_model.c -o ${B}/kws_model.o
    ${AR} rcs ${B}/libkws_model.a ${B}/kws_model.o
}

do_install() {
    install -d ${D}${includedir} ${D}${libdir} ${D}${datadir}/edgekit/kws
    install -m 0644 ${B}/gen/kws_model.h ${D}${includedir}/
    install -m 0644 ${B}/libkws_model.a ${D}${libdir}/
    install -m 0644 ${B}/bundle/manifest.json ${D}${datadir}/edgekit/kws/
    install -m 0644 ${B}/bundle/${EDGEKIT_TARGET}/model.tflite ${D}${datadir}/edgekit/kws/
}

FILES:${PN}-staticdev += "${libdir}/libkws_model.a"
FILES:${PN} += "${datadir}/edgekit"
